"""Clients: ``Client`` (blocking) and ``AsyncClient`` (asyncio). Writes go to Kafka, reads come from the
PostgreSQL projections.
"""
