"""The web pages of ``loradex serve``: search, module, author and base-model pages, sign-in.

``pages`` routes and renders (Jinja2, autoescaped), ``queries`` reads (visibility applied),
``render`` makes untrusted card Markdown safe and draws the charts, ``session`` keeps the
sign-in token cookie and checks CSRF. ``registry.server.app`` hands every request no API
route took to :meth:`pages.WebPages.dispatch`.
"""
