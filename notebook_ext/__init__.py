"""The IPython extension of sessiontrace (``%load_ext notebook_ext``).

The extension's magics and cell hooks are tracked in the Jupyter issue; until they land, use
``sdk.init(auto_start_session=True)`` and ``with sdk.session(...)`` in notebooks as in scripts.
"""
