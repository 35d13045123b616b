"""The app's DNS at independent providers, moved with octoDNS.

records: the desired records for the app's names (pure). providers: octoDNS provider objects
from DnsProvider entries. sync: plan/apply per provider. verify: ask each authoritative server.
ttl: lower or restore TTLs. servers/local: Knot and PowerDNS processes for the local cloud and tests.
"""
