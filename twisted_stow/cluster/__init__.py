"""The cluster's shared state in PostgreSQL (``--index postgresql://...``, docs/CLUSTER.md).

``database`` (connections off the reactor, health), ``schema`` (versioned
migrations), ``index`` (the SOP instance index in front of any storage's
commit), ``outbox`` (workflow requests relayed by every node), ``wiring``
(what ``site`` and ``tap`` call).
"""
