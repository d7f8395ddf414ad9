/*
  ossec-dfir example rules: cryptocurrency miners (XMRig family and configs).
*/

rule miner_stratum_pool_url
{
    meta:
        description = "Stratum mining pool URL (miner binary, config or dropper script)"
        author = "ossec-dfir"
        severity = "medium"
    strings:
        $s1 = "stratum+tcp://" ascii wide nocase
        $s2 = "stratum+ssl://" ascii wide nocase
        $s3 = "stratum2+tcp://" ascii wide nocase
    condition:
        any of them
}

rule miner_xmrig_config
{
    meta:
        description = "XMRig JSON configuration (pools, donate-level, randomx)"
        author = "ossec-dfir"
        severity = "medium"
    strings:
        $pools = "\"pools\"" ascii
        $donate = "\"donate-level\"" ascii
        $rx = "\"randomx\"" ascii
        $url = "\"url\"" ascii
        $user = "\"user\"" ascii
    condition:
        filesize < 1MB and $pools and $url and $user and ($donate or $rx)
}

rule miner_xmrig_binary
{
    meta:
        description = "XMRig miner binary (ELF with XMRig strings)"
        author = "ossec-dfir"
        severity = "high"
    strings:
        $a = "XMRig" ascii
        $b = "cryptonight" ascii nocase
        $c = "randomx" ascii nocase
        $d = "--donate-level" ascii
        $e = "mining.submit" ascii
    condition:
        uint32(0) == 0x464c457f and $a and 2 of ($b, $c, $d, $e)
}
