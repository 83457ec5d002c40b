#!/bin/sh
# Creates the Optuna and MLflow databases on a new PostgreSQL volume; run once by the
# postgres image from /docker-entrypoint-initdb.d (see docker-compose.yml), safe to re-run.
set -eu

# Names come from the compose environment; both databases belong to POSTGRES_USER,
# which is also the role the worker, MLflow and optuna-dashboard connect as.
: "${OPTUNA_DB:=optuna}"
: "${MLFLOW_DB:=mlflow}"

for db in "$OPTUNA_DB" "$MLFLOW_DB"; do
    # CREATE DATABASE has no IF NOT EXISTS: build the statement only when the name is
    # free and let \gexec run it; %I quotes the name as an identifier.
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" \
        --dbname "${POSTGRES_DB:-$POSTGRES_USER}" -v db="$db" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
SQL
done
