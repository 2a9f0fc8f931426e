"""SQLite, the store of one host (WHATSAPP_STORE unset): files in the account's session folder.

Each module implements a protocol of ``stores/``: ``ledger`` (``LedgerStore``), ``contacts``
(``Contacts``), ``numbers`` (``Numbers``), ``api_requests`` (``ApiRequests``), ``outbox`` (the
webhook ``Outbox``). Chosen by ``stores/open.py``; blocking (sqlite3).
"""
