#!/usr/bin/env bash
# A private CA and a server certificate for `localhost` / 127.0.0.1 signed by it, valid two days,
# for tests that serve TLS: writes ca.pem, ca.key, cert.pem and key.pem into DIR.
# Usage: scripts/test-certs.sh DIR
set -euo pipefail
cd "$1"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -subj "/CN=pitlake test CA" -keyout ca.key -out ca.pem -days 2 2>/dev/null
openssl req "${ec[@]}" -subj /CN=localhost -keyout key.pem -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 \
  -extfile ext.cnf 2>/dev/null
