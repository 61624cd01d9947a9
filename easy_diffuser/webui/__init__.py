"""The webui extension over the core: the shared model service, the tab (layout, handlers, settings, logic,
HTML) and the HTTP routes. Only host.py imports the webui (`modules`), and only the script
(scripts/easy_diffuser_tab.py) imports host.py; controls.py, markup.py and service.py need neither
gradio nor fastapi."""
