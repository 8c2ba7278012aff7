"""Human verification (DESIGN §2 step 4): the store, batches, agreement, gold export, the web app
and the replay client of recorded human labels.

The pure parts (``batches``, ``agreement``, ``decide``) work on plain rows; ``store`` holds the
SQLAlchemy models (SQLite in WAL mode by default, a Postgres URL at scale); ``app`` serves the
annotation and admin pages; ``export`` writes verified items as gold shards with a manifest;
``rounds`` is what a Stage-1 round calls; ``replay`` submits recorded human labels over HTTP and
``serve`` runs the app in-process for a replayed round.
"""
