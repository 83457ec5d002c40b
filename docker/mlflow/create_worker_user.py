"""Creates (or re-passwords) the MLflow user the workers log as, through the basic-auth admin API.

Run once by the `mlflow-worker-user` service of docker-compose.yml before any worker starts:
MLFLOW_TRACKING_USERNAME/PASSWORD are the admin's, WORKER_USERNAME/PASSWORD the user to make.
"""

import os
import sys

from mlflow.exceptions import RestException
from mlflow.server.auth.client import AuthServiceClient


def main() -> int:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    user, password = os.environ["WORKER_USERNAME"], os.environ["WORKER_PASSWORD"]
    client = AuthServiceClient(uri)
    try:
        client.get_user(user)
    except RestException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        # a plain user: it gets MANAGE on the experiments and models it creates, READ on the rest
        client.create_user(user, password)
        print(f"created MLflow user {user!r}")
        return 0
    # exists (a restarted stack): the password in .env wins, so rotating it there takes effect
    client.update_user_password(user, password)
    print(f"MLflow user {user!r} exists; password set from the environment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
