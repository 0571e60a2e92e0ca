"""One transport for every real host: the system OpenSSH client (DESIGN.md 11).

    from provisioning.transport import Transport
    t = Transport(data_dir)
    t.learn_host_key(conn, trust_on_first_use=False)
    t.run(conn, ["uname", "-m"]).stdout
    t.copy(conn, Path("site.conf"), "/etc/nginx/conf.d/site.conf", mode=0o644)

`conn` holds the connection facts a provider gives (Provider.connection):
address, port, user, identity_file, host_key, and optionally hostname (for
messages). Failures to reach a host are TransportError with a plain reason.
"""

from provisioning.transport.ssh import Transport, close_masters, control_dir

__all__ = ["Transport", "close_masters", "control_dir"]
