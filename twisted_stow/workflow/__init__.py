"""MONAI profile: one workflow request per POST on a ``/dicomweb/`` route.

``request`` builds it (pure), ``spool`` writes it durably (blocking, no
Twisted), ``trigger`` connects both to the Klein route, and ``amqp`` publishes
spooled requests to RabbitMQ.  docs/WORKFLOW.md has the schema.  Nothing is
imported here, so the pure modules stay importable without Twisted.
"""
