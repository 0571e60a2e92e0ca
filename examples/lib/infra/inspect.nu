# Op `infra.inspect`, written in Nushell: an example of an extension op.
#
# Put this lib dir on PROVISIONING_LIB (or executor.lib_dirs) and a workflow
# task with op = "infra.inspect" runs `nu <lib>/infra/inspect.nu`, params
# JSON on stdin, like every op (DESIGN.md section 6).
def main [] {
    let params = ($in | from json)
    print "PROGRESS: 10 reading the infra definition"
    let settings = (open ($params.infra | path join "settings.toml"))
    let servers = ($settings.servers | get hostname)
    print $"inspected ($servers | length) servers: ($servers | str join ', ')"
    print "PROGRESS: 100 done"
    print $"RESULT: ({infra: $params.infra, servers: $servers} | to json --raw)"
}
