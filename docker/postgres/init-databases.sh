#!/bin/sh
# Creates one login role per service and the databases they own on a new PostgreSQL volume; run
# once by the postgres image from /docker-entrypoint-initdb.d (see docker-compose.yml), safe to re-run.
#
# Roles (none superuser, none may create roles or databases):
#   OPTUNA_ROLE     owns OPTUNA_DB: the workers and the optuna-schema job create and write Optuna's tables
#   MLFLOW_ROLE     owns MLFLOW_DB and MLFLOW_AUTH_DB: the MLflow server's runs and its basic-auth users
#   DASHBOARD_ROLE  may connect to OPTUNA_DB and SELECT from its tables, nothing else (optuna-dashboard)
# No other role (PUBLIC) may connect to these databases. Passwords are read from the environment
# by psql's \getenv, so none is on a command line; a re-run sets them again (password rotation).
set -eu

: "${OPTUNA_DB:=optuna}"
: "${MLFLOW_DB:=mlflow}"
: "${MLFLOW_AUTH_DB:=mlflow_auth}"
: "${OPTUNA_ROLE:=optuna}"
: "${MLFLOW_ROLE:=mlflow}"
: "${DASHBOARD_ROLE:=optuna_dashboard}"

for var in OPTUNA_DB_PASSWORD MLFLOW_DB_PASSWORD DASHBOARD_DB_PASSWORD; do
    eval "value=\${$var:-}"
    if [ -z "$value" ]; then
        echo "init-databases.sh: $var is empty; set it in .env (see .env.example)" >&2
        exit 1
    fi
done

# The superuser's maintenance database; psql runs every statement as POSTGRES_USER.
admin_db="${POSTGRES_DB:-$POSTGRES_USER}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname "$admin_db" \
    -v optuna_role="$OPTUNA_ROLE" -v mlflow_role="$MLFLOW_ROLE" -v dashboard_role="$DASHBOARD_ROLE" \
    -v optuna_db="$OPTUNA_DB" -v mlflow_db="$MLFLOW_DB" -v auth_db="$MLFLOW_AUTH_DB" <<'SQL'
\getenv optuna_pw OPTUNA_DB_PASSWORD
\getenv mlflow_pw MLFLOW_DB_PASSWORD
\getenv dashboard_pw DASHBOARD_DB_PASSWORD

-- CREATE ROLE and CREATE DATABASE have no IF NOT EXISTS: each statement is built only when
-- the name is free and \gexec runs it; %I quotes a name as an identifier.
SELECT format('CREATE ROLE %I', r) FROM unnest(ARRAY[:'optuna_role', :'mlflow_role', :'dashboard_role']) AS r
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r)
\gexec
-- Stated on every run, so a role made by hand earlier loses what it should not have.
ALTER ROLE :"optuna_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'optuna_pw';
ALTER ROLE :"mlflow_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'mlflow_pw';
ALTER ROLE :"dashboard_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'dashboard_pw';

SELECT format('CREATE DATABASE %I OWNER %I', db, owner)
FROM (VALUES (:'optuna_db', :'optuna_role'), (:'mlflow_db', :'mlflow_role'), (:'auth_db', :'mlflow_role')) AS d(db, owner)
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = db)
\gexec
-- A database made by an earlier version of this script belonged to the superuser.
ALTER DATABASE :"optuna_db" OWNER TO :"optuna_role";
ALTER DATABASE :"mlflow_db" OWNER TO :"mlflow_role";
ALTER DATABASE :"auth_db" OWNER TO :"mlflow_role";
-- PUBLIC may connect to any new database by default: only the owner (and the dashboard, to
-- OPTUNA_DB) may here, so the optuna role cannot open MLflow's databases and the reverse.
REVOKE ALL ON DATABASE :"optuna_db", :"mlflow_db", :"auth_db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"optuna_db" TO :"dashboard_role";

-- Inside OPTUNA_DB: the dashboard reads every table the optuna role has made or will make.
\connect :"optuna_db"
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"dashboard_role";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"dashboard_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"optuna_role" IN SCHEMA public GRANT SELECT ON TABLES TO :"dashboard_role";
SQL
echo "init-databases.sh: roles $OPTUNA_ROLE, $MLFLOW_ROLE, $DASHBOARD_ROLE; databases $OPTUNA_DB, $MLFLOW_DB, $MLFLOW_AUTH_DB"
