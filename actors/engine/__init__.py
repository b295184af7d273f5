"""The deterministic engine: workflow definitions, the replay driver, one workflow id's state machine and
what each event obliges the owner to send. No Kafka, no PostgreSQL, no threads: everything here is fed
events and returns decisions, so a node, the test environment and the replayer run the same code.
"""
