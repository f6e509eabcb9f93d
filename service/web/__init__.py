"""The dashboard served at ``/``: server-rendered page shells (Jinja2) whose small scripts read
and write only through the ``/v1`` API, the sign-in that gives a browser its session cookie,
and the vendored static assets (``static/vendor``, listed in ``static/vendor/NOTICE.md``)."""
