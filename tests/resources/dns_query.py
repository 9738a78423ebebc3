#!/usr/bin/env python3
"""An independent DNS client (dnspython) for the testdns tests.

Usage: dns_query.py <ip> <port> <name> <type> udp|tcp
Prints JSON: {"rcode": "NOERROR" | "NXDOMAIN" | ..., "tc": bool,
              "answers": [["TXT", ["str1", "str2"]] | ["MX", "10 mx.example."] | [type, text], ...]}
"""
import json
import sys

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def main():
    ip, port, name, rtype, transport = sys.argv[1:6]
    query = dns.message.make_query(name, rtype)
    if transport == "tcp":
        response = dns.query.tcp(query, ip, port=int(port), timeout=5)
    else:
        response = dns.query.udp(query, ip, port=int(port), timeout=5, ignore_trailing=False)
    answers = []
    for rrset in response.answer:
        for rdata in rrset:
            kind = dns.rdatatype.to_text(rdata.rdtype)
            if kind == "TXT":
                answers.append([kind, [s.decode() for s in rdata.strings]])
            else:
                answers.append([kind, rdata.to_text()])
    print(json.dumps({
        "rcode": dns.rcode.to_text(response.rcode()),
        "tc": bool(response.flags & dns.flags.TC),
        "aa": bool(response.flags & dns.flags.AA),
        "answers": answers,
    }))


if __name__ == "__main__":
    main()
