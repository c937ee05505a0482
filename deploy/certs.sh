#!/usr/bin/env bash
# deploy/certs.sh -- a development certificate authority and the certificates of a needletrace
# installation, made with openssl; and the broker's ACL that matches them.
#
#   deploy/certs.sh OUTDIR [--broker NAME]... [--collector NAME] [--pen CLINIC/SERIAL]...
#                          [--gateway NAME/CLINIC]... [--days N]
#
# Writes into OUTDIR (created with mode 0700; every key file 0600):
#   ca.crt ca.key              the CA (EC P-256, 10 years). Keep ca.key offline in production.
#   broker.crt broker.key      the broker's server certificate: CN = the first --broker name
#                              (default localhost), subjectAltName = every --broker name plus
#                              localhost and 127.0.0.1; extendedKeyUsage serverAuth.
#   collector.crt collector.key
#                              the collector's client certificate, CN = --collector (default
#                              needletrace-collector).
#   pens/SERIAL.crt pens/SERIAL.key
#                              one client certificate per pen: CN = the pen's serial,
#                              OU = its clinic.
#   gateways/NAME.crt gateways/NAME.key
#                              a gateway that publishes for every pen of one clinic (CLINIC) or of
#                              all clinics ('+'; a test fleet simulator).
#   issued                     what was issued ("pen SERIAL CLINIC", "gateway NAME CLINIC")
#   acl                        mosquitto's acl_file for a listener with use_identity_as_username
#                              (the identity is the certificate's CN): each pen may publish only to
#                              clinics/CLINIC/handpieces/SERIAL/telemetry, a gateway only to its
#                              clinic's handpieces; the collector may read telemetry (also through a
#                              $share subscription) and write alerts, nothing else.
#
# An existing CA in OUTDIR is reused (so that pens can be added later); an existing leaf
# certificate is kept unless --renew is given. Names are 1-64 characters of [A-Za-z0-9._-]: they
# go into certificate subjects and into the ACL, where anything else could forge a rule.
# Rotation: issue a new certificate with --renew before the old one expires (the CA signs it, so
# the broker needs no change), install it, then restart the collector or the pen. To replace
# the CA, make a new OUTDIR, give the broker both CAs in one cafile during the changeover, and
# move every client over before removing the old one.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit "${1:-2}"
}

die() {
    printf 'certs.sh: %s\n' "$*" >&2
    exit 2
}

valid_name() {
    [[ $1 =~ ^[A-Za-z0-9._-]{1,64}$ ]]
}

out=""
brokers=()
collector=needletrace-collector
pens=()
gateways=()
days=825
renew=0
while (($#)); do
    case $1 in
        --broker) brokers+=("${2:?--broker needs a name}"); shift 2 ;;
        --collector) collector=${2:?--collector needs a name}; shift 2 ;;
        --pen) pens+=("${2:?--pen needs CLINIC/SERIAL}"); shift 2 ;;
        --gateway) gateways+=("${2:?--gateway needs NAME/CLINIC}"); shift 2 ;;
        --days) days=${2:?--days needs a number}; shift 2 ;;
        --renew) renew=1; shift ;;
        -h | --help) usage 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [[ -z $out ]] || die "one OUTDIR only"; out=$1; shift ;;
    esac
done
[[ -n $out ]] || usage
command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"
if ! [[ $days =~ ^[0-9]{1,5}$ ]] || ((days < 1)); then
    die "--days must be 1-99999"
fi
((${#brokers[@]})) || brokers=(localhost)
for n in "${brokers[@]}"; do
    [[ $n =~ ^[A-Za-z0-9.:-]{1,253}$ ]] || die "bad broker name '$n'"
done
valid_name "$collector" || die "bad collector name '$collector'"
declare -A pen_clinic=()
for p in "${pens[@]}"; do
    [[ $p == */* ]] || die "--pen wants CLINIC/SERIAL, not '$p'"
    if ! valid_name "${p%%/*}" || ! valid_name "${p#*/}"; then
        die "bad --pen '$p'"
    fi
    [[ ${p#*/} != "$collector" ]] || die "pen serial '${p#*/}' is the collector's name"
    pen_clinic[${p#*/}]=${p%%/*}
done
declare -A gw_clinic=()
for g in "${gateways[@]}"; do
    [[ $g == */* ]] || die "--gateway wants NAME/CLINIC, not '$g'"
    valid_name "${g%%/*}" || die "bad gateway name in '$g'"
    [[ ${g#*/} == + ]] || valid_name "${g#*/}" || die "bad gateway clinic in '$g'"
    [[ -z ${pen_clinic[${g%%/*}]:-} && ${g%%/*} != "$collector" ]] ||
        die "gateway name '${g%%/*}' is already a pen's or the collector's"
    gw_clinic[${g%%/*}]=${g#*/}
done

umask 077
mkdir -p "$out/pens" "$out/gateways"
chmod 700 "$out"
cd "$out"

# What was issued before (OUTDIR/issued: "pen SERIAL CLINIC" / "gateway NAME CLINIC" lines), so
# that the ACL keeps every pen when more are added later; a pen given again with another clinic
# is moved (its certificate is issued again, its ACL entry replaced).
declare -A moved=()
if [[ -f issued ]]; then
    while read -r kind name clinic; do
        case $kind in
            pen) [[ -n ${pen_clinic[$name]:-} ]] || pen_clinic[$name]=$clinic ;;
            gateway) [[ -n ${gw_clinic[$name]:-} ]] || gw_clinic[$name]=$clinic ;;
        esac
        if [[ $kind == pen && ${pen_clinic[$name]} != "$clinic" ]]; then
            moved[$name]=1
        fi
    done <issued
fi

# key FILE: a new EC P-256 private key (mode 0600 through the umask).
key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

if [[ ! -f ca.key || ! -f ca.crt ]]; then
    key ca.key
    openssl req -new -x509 -key ca.key -out ca.crt -days 3650 -sha256 \
        -subj "/O=needletrace/CN=needletrace development CA" \
        -addext "basicConstraints=critical,CA:true,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    printf 'certs.sh: made a new CA in %s\n' "$out" >&2
fi

# leaf BASE SUBJECT EKU [SAN] [FORCE]: BASE.key and BASE.crt signed by the CA.
leaf() {
    local base=$1 subj=$2 eku=$3 san=${4:-} force=${5:-0} ext
    if [[ -f $base.crt && -f $base.key && $renew == 0 && $force == 0 ]]; then
        return 0
    fi
    key "$base.key"
    ext=$(mktemp)
    {
        printf 'basicConstraints=critical,CA:false\n'
        printf 'keyUsage=critical,digitalSignature\n'
        printf 'extendedKeyUsage=%s\n' "$eku"
        [[ -z $san ]] || printf 'subjectAltName=%s\n' "$san"
    } >"$ext"
    openssl req -new -key "$base.key" -subj "$subj" 2>/dev/null |
        openssl x509 -req -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
            -extfile "$ext" -out "$base.crt" 2>/dev/null
    rm -f "$ext"
    chmod 644 "$base.crt"
}

san="DNS:localhost,IP:127.0.0.1"
for n in "${brokers[@]}"; do
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then
        [[ $n == 127.0.0.1 ]] || san+=",IP:$n"
    else
        [[ $n == localhost ]] || san+=",DNS:$n"
    fi
done
leaf broker "/O=needletrace/CN=${brokers[0]}" serverAuth "$san"
leaf collector "/O=needletrace/CN=$collector" clientAuth
for s in "${!pen_clinic[@]}"; do
    leaf "pens/$s" "/O=needletrace/OU=${pen_clinic[$s]}/CN=$s" clientAuth "" "${moved[$s]:-0}"
done
for g in "${!gw_clinic[@]}"; do
    leaf "gateways/$g" "/O=needletrace/OU=gateway/CN=$g" clientAuth
done
chmod 644 ca.crt

{
    printf '# needletrace broker ACL, written by deploy/certs.sh: the identity is the client\n'
    printf "# certificate's CN (use_identity_as_username true). Anything not listed is denied.\n\n"
    # shellcheck disable=SC2016 # a literal $share
    printf '# The collector: reads telemetry (also as $share/<group>/...), writes alerts.\n'
    printf 'user %s\n' "$collector"
    printf 'topic read clinics/+/handpieces/+/telemetry\n'
    printf 'topic write clinics/+/alerts/#\n'
    printf 'topic write needletrace/digests/#\n\n'
    for s in $(printf '%s\n' "${!pen_clinic[@]}" | sort); do
        printf '# pen %s of clinic %s\nuser %s\n' "$s" "${pen_clinic[$s]}" "$s"
        printf 'topic write clinics/%s/handpieces/%s/telemetry\n\n' "${pen_clinic[$s]}" "$s"
    done
    for g in $(printf '%s\n' "${!gw_clinic[@]}" | sort); do
        printf '# gateway %s for clinic %s\nuser %s\n' "$g" "${gw_clinic[$g]}" "$g"
        printf 'topic write clinics/%s/handpieces/+/telemetry\n\n' "${gw_clinic[$g]}"
    done
} >acl.new
chmod 644 acl.new
for s in "${!pen_clinic[@]}"; do printf 'pen %s %s\n' "$s" "${pen_clinic[$s]}"; done >issued.new
for g in "${!gw_clinic[@]}"; do printf 'gateway %s %s\n' "$g" "${gw_clinic[$g]}"; done >>issued.new
sort -o issued issued.new
rm -f issued.new
mv acl.new acl
printf 'certs.sh: %s: CA, broker (%s), collector (%s), %d pen(s), %d gateway(s), acl\n' \
    "$out" "${brokers[*]}" "$collector" "${#pen_clinic[@]}" "${#gw_clinic[@]}" >&2
