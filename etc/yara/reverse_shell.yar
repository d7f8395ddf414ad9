/*
  ossec-dfir example rules: reverse shells and download-and-run droppers.
*/

rule revshell_bash_dev_tcp
{
    meta:
        description = "Interactive shell redirected to /dev/tcp or /dev/udp"
        author = "ossec-dfir"
        severity = "high"
    strings:
        $a = /(ba)?sh\s+-i\s*[>&]{1,3}\s*\/dev\/(tcp|udp)\/[^\/\s]{1,64}\/\d{1,5}/
        $b = /exec\s+\d{1,3}<>\s*\/dev\/tcp\/[^\/\s]{1,64}\/\d{1,5}/
    condition:
        any of them
}

rule revshell_netcat_exec
{
    meta:
        description = "netcat running a shell for a remote peer, or the mkfifo relay"
        author = "ossec-dfir"
        severity = "high"
    strings:
        $nc = /\b(nc|ncat|netcat)(\.traditional)?\s+(-[a-z]+\s+)*-[a-z]*e\s+\/bin\/(ba)?sh/
        $fifo = /mkfifo\s+\/tmp\/[^\s;]{1,32}\s*;.{0,64}\|\s*(\/bin\/)?(ba)?sh\s+-i.{0,64}\|\s*(nc|ncat)\s/
    condition:
        any of them
}

rule revshell_scripting_socket_pty
{
    meta:
        description = "Python/Perl/PHP socket connected back with a spawned shell"
        author = "ossec-dfir"
        severity = "high"
    strings:
        $py1 = "socket.socket(" ascii
        $py2 = /os\.dup2\s*\(\s*\w+\.fileno\(\)\s*,\s*[012]\s*\)/
        $py3 = /pty\.spawn\s*\(\s*["']\/bin\/(ba)?sh["']\s*\)/
        $pl1 = /socket\s*\(\s*S\s*,\s*PF_INET/
        $pl2 = /exec\s*\(\s*["']\/bin\/(ba)?sh\s+-i["']\s*\)/
        $php1 = /fsockopen\s*\(.{1,80}\)\s*;.{0,120}(exec|shell_exec|system|proc_open)\s*\(\s*["']\/bin\/(ba)?sh/
    condition:
        ($py1 and ($py2 or $py3)) or ($pl1 and $pl2) or $php1
}

rule dropper_curl_pipe_shell
{
    meta:
        description = "Download piped straight into a shell (curl|sh, wget -O- | bash)"
        author = "ossec-dfir"
        severity = "medium"
    strings:
        $a = /(curl|wget)\s[^|\n]{0,200}\|\s*(sudo\s+)?(ba)?sh\b/
        $b = /(curl|wget)\s[^;\n]{0,200}-O\s*\/tmp\/[^;\n]{1,64};\s*chmod\s+\+?[0-7x]{1,4}\s+\/tmp\//
    condition:
        any of them
}
