"""What people and other programs use: the ``metamorph`` CLI, the HTTP API and its web UI, webhooks,
``dev`` and ``demo``. Everything here calls the client or runs a node; nothing below imports it.
"""
