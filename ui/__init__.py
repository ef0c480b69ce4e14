"""The Gradio app's parts: ``common`` (checks, shared controls, the handlers' pipeline) and one module per
tab, each with a ``build(app)`` that lays the tab out and wires its events. ``app.py`` puts them together."""
