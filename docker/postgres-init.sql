-- Roles and databases of the lafs stack (flows/stack.py: DATABASES), run once on a new PostgreSQL cluster by its
-- superuser: by the postgres image from /docker-entrypoint-initdb.d (docker/compose.yaml), by tests/stack with
--   psql -v ON_ERROR_STOP=1 -h HOST -p PORT -U postgres -d postgres -f docker/postgres-init.sql
-- Passwords come from MLFLOW_DB_PASSWORD and PREFECT_DB_PASSWORD (defaults: the role names). Needs psql >= 15.
\set mlflow_password mlflow
\getenv mlflow_password MLFLOW_DB_PASSWORD
\set prefect_password prefect
\getenv prefect_password PREFECT_DB_PASSWORD

CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
