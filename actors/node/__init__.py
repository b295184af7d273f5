"""A node process: owns command partitions, hosts live workflows as (pooled) pykka actors, appends their
events, fires their timers, forwards ``<ns>.ingress``. It drives ``actors.engine``; the engine never calls
back into it.
"""
