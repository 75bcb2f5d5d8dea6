"""Bytewax input connectors. They know transports, not domains.

Every source yields raw messages ``(origin, payload, received_at)``: ``origin`` a string
(topic, ``purpleair``, ``path:line``), ``payload`` bytes or a decoded mapping and
``received_at`` seconds since the epoch. The ``parse`` operator makes readings of them.
"""
