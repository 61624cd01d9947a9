"""What the webui adapter (scripts/easy_diffuser_tab.py) uses, free of webui imports:
the shared model service, the tab's logic and HTML, and the HTTP routes (http_api.py, imported
only when routes are added, since it needs fastapi)."""
