/*
  ossec-dfir example rules: web shells (PHP, JSP, ASP.NET).
  Written for ossec-dfir; indicators of code that executes request input.
  Tune before production use: these are examples, not a complete rule set.
*/

rule webshell_php_eval_request
{
    meta:
        description = "PHP evaluating or executing data taken from the HTTP request"
        author = "ossec-dfir"
        severity = "high"
    strings:
        $php = "<?" ascii
        $exec1 = /(eval|assert|system|passthru|shell_exec|exec|popen|proc_open)\s*\(\s*(base64_decode\s*\(\s*)?(stripslashes\s*\(\s*)?\$_(GET|POST|REQUEST|COOKIE|SERVER)\s*\[/ nocase
        $exec2 = /(eval|assert)\s*\(\s*(gzinflate|gzuncompress|str_rot13|base64_decode)\s*\(/ nocase
        $preg_e = /preg_replace\s*\(\s*['"].{1,40}\/e['"]/ nocase
    condition:
        $php and any of ($exec*, $preg_e) and filesize < 2MB
}

rule webshell_php_backticks_request
{
    meta:
        description = "PHP backtick execution of request data"
        author = "ossec-dfir"
        severity = "high"
    strings:
        $php = "<?" ascii
        $bt = /`\s*\$_(GET|POST|REQUEST)\s*\[[^\]]{1,32}\]\s*`/
    condition:
        $php and $bt and filesize < 2MB
}

rule webshell_jsp_runtime_exec
{
    meta:
        description = "JSP running a command from a request parameter"
        author = "ossec-dfir"
        severity = "high"
    strings:
        $exec = "Runtime.getRuntime().exec(" ascii
        $param = "request.getParameter(" ascii
        $pb = "new ProcessBuilder(" ascii
    condition:
        ($exec or $pb) and $param and filesize < 2MB
}

rule webshell_aspx_process_start
{
    meta:
        description = "ASP.NET page starting cmd.exe or a process from Request input"
        author = "ossec-dfir"
        severity = "high"
    strings:
        $page = "<%@" ascii
        $proc = "Process.Start(" ascii nocase
        $req = /Request(\.Form|\.QueryString)?\s*\[/ ascii
        $cmd = "cmd.exe" ascii nocase
    condition:
        $page and $proc and ($req or $cmd) and filesize < 2MB
}
