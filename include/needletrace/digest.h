/* digest.h -- signed digests of the ledger's chain heads, kept outside the database.
 *
 * A digest names the head (newest entry) of every collector's chain at one time, signed with
 * Ed25519 (OpenSSL). Someone with the database's superuser rights can rewrite a chain so that it
 * verifies by itself; they cannot make it match a digest an auditor kept elsewhere (a file
 * directory, a retained MQTT message).
 *
 * The signed text (UTF-8, '\n' after every line):
 *     needletrace-digest-v1
 *     database=<database name>
 *     time=<YYYY-MM-DDTHH:MM:SS.ssssssZ, when the heads were read>
 *     head=<collector_id> <seq> <entry_hash, 64 hex> <committed_at as in the ledger>
 *     ... one head line per chain, sorted by collector_id
 * The file (digest-<time>.json) is one JSON object: {"version": 1, "signed": <the text>,
 * "signature": <128 hex: Ed25519 over the text's bytes>, "key": <64 hex: SHA-256 of the public
 * key's DER (SubjectPublicKeyInfo)>}. Checking one takes the public key, an Ed25519 verify of
 * "signed", and reading its lines: README, "Checking a digest". */
#ifndef NEEDLETRACE_DIGEST_H
#define NEEDLETRACE_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define NT_DIGEST_KEY_FILE "digest-signing.key"
#define NT_DIGEST_PUB_FILE "digest-signing.pub"

/* One chain head. */
typedef struct {
    char collector_id[65];
    int64_t seq;
    char entry_hash[65]; /* hex */
    char committed_at[40];
} nt_digest_head_t;

/* A new Ed25519 key pair in dir: NT_DIGEST_KEY_FILE (PEM PKCS#8, mode 0600, never overwritten)
 * and NT_DIGEST_PUB_FILE (PEM). 0, or -1 with err. */
int nt_digest_keygen(const char *dir, char *err, size_t errlen);

/* The signed text of these heads (see above) into a malloc'd string, or NULL (out of memory). */
char *nt_digest_text(const char *database, const char *time, const nt_digest_head_t *heads,
                     size_t n);

/* The digest document (JSON, see above) of text signed with the private key in key_file, in a
 * malloc'd string, or NULL with err. */
char *nt_digest_sign(const char *key_file, const char *text, char *err, size_t errlen);

/* Writes a digest document into dir as digest-<time>.json (written whole, synced, renamed into
 * place). path (when not NULL) gets the file's path. 0, or -1 with err. */
int nt_digest_write(const char *dir, const char *time, const char *json, char *path, size_t pathlen,
                    char *err, size_t errlen);

/* Reads every chain head from the database (needletrace.ledger_heads) now: the signed text into
 * a malloc'd *text, its time into time, the number of heads into *n. 0, or -1 with err. */
int nt_digest_from_db(void *pgconn, char **text, char *time, size_t timelen, size_t *n, char *err,
                      size_t errlen);

/* Reads a digest file, checks its signature with the public key in pub_file, and parses its
 * heads (at most max) into heads. Returns the number of heads, or -1 with err (unreadable,
 * malformed, or the signature does not verify). time gets the digest's time. */
int nt_digest_read(const char *path, const char *pub_file, nt_digest_head_t *heads, size_t max,
                   char *time, size_t timelen, char *err, size_t errlen);

#endif
