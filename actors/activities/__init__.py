"""Activity workers: consume ``<ns>.activities.<queue>``, apply the queue's flow limits, run one attempt,
report its outcome; plus the API activity code calls (``heartbeat``, ``activity_info``).
"""
