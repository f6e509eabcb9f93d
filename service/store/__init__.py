"""The durable job store: SQLAlchemy tables, repository functions and Alembic migrations.

``tables`` holds the ORM models, ``db`` builds engines and sessions and migrates a database,
``repo`` is the only place that queries them (its lease half, claiming and fenced writes, is in
``leases``). SQLite (one machine) and PostgreSQL (several
workers) are both first-class: claiming uses ``BEGIN IMMEDIATE`` on the first and
``FOR UPDATE SKIP LOCKED`` on the second.
"""
