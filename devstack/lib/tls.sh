# shellcheck shell=bash
# shellcheck disable=SC2034 # the paths below are read by the services' files
# The everyday stack's TLS: a CA of its own, made once with openssl under $DEVSTACK_DIR/tls/
# (git-ignored, keys mode 0600), a server certificate for 127.0.0.1 and localhost that
# MariaDB, Redis and Kafka present on their TLS endpoints, and a client certificate the
# service presents (config.tls.yaml names them). Sourced by devstack/services.sh.

TLS_DIR="$DEVSTACK_DIR/tls"
TLS_CA="$TLS_DIR/ca.pem"
TLS_SERVER_CERT="$TLS_DIR/server.pem"
TLS_SERVER_KEY="$TLS_DIR/server.key"
TLS_CLIENT_CERT="$TLS_DIR/client.pem"
TLS_CLIENT_KEY="$TLS_DIR/client.key"
# Kafka reads its certificate and key from a PKCS#12 keystore, which needs a password.
TLS_KAFKA_KEYSTORE="$TLS_DIR/kafka-server.p12"
TLS_KAFKA_PASSWORD_FILE="$TLS_DIR/kafka-keystore.password"
TLS_DAYS=3650

# tls_enabled: this stack serves TLS beside plaintext (the everyday stack does; the cluster
# stack does not).
tls_enabled() { [[ $DEVSTACK_STACK == everyday ]]; }

# ensure_tls: the CA and the certificates, made once (a later `up` reuses them, so a
# running server's certificate stays valid); all of them again if one is missing.
ensure_tls() {
  tls_enabled || return 0
  local f
  for f in "$TLS_CA" "$TLS_SERVER_CERT" "$TLS_SERVER_KEY" "$TLS_CLIENT_CERT" "$TLS_CLIENT_KEY" \
    "$TLS_KAFKA_KEYSTORE" "$TLS_KAFKA_PASSWORD_FILE"; do
    [[ -s "$f" ]] || {
      need_cmd openssl openssl
      tls_make >>"$LOG_DIR/tls.log" 2>&1 || fail tls "$LOG_DIR/tls.log" "openssl could not make the dev CA and certificates"
      log "tls: made a CA and certificates in $TLS_DIR"
      return 0
    }
  done
}

tls_make() {
  local tmp
  mkdir -p "$LOG_DIR"
  (umask 077 && mkdir -p "$TLS_DIR")
  tmp="$(mktemp -d "$TLS_DIR/make.XXXXXX")"
  (
    set -euo pipefail
    umask 077
    cd "$tmp"
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days "$TLS_DAYS" \
      -subj "/CN=singleton devstack CA" -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign
    # tls_sign NAME CN EXTENDED-USAGE [SAN]: NAME.key and NAME.pem, signed by the CA.
    tls_sign() {
      openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
      {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        [[ -z "${4:-}" ]] || echo "subjectAltName=$4"
      } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
        -days "$TLS_DAYS" -extfile "$1.ext"
    }
    tls_sign server localhost serverAuth "DNS:localhost,IP:127.0.0.1"
    tls_sign client singleton-service clientAuth
    head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >kafka-keystore.password
    openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name server \
      -out kafka-server.p12 -passout file:kafka-keystore.password
    chmod 644 ca.pem server.pem client.pem
    mv ca.key ca.pem server.key server.pem client.key client.pem kafka-server.p12 kafka-keystore.password "$TLS_DIR/"
  ) || {
    rm -rf "$tmp"
    return 1
  }
  rm -rf "$tmp"
}
