/* digest.c -- signed digests of the ledger's chain heads (digest.h). */
#include "needletrace/digest.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "needletrace/common.h"
#include "needletrace/ident.h"

#define DIGEST__MAGIC "needletrace-digest-v1"

static void digest__hex(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int digest__unhex(const char *in, unsigned char *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char c = in[2 * i + k];
            unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                         : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                                                : 16u;
            if (d > 15) {
                return -1;
            }
            v = v * 16 + d;
        }
        out[i] = (unsigned char)v;
    }
    return in[2 * n] == '\0' || in[2 * n] == '"' ? 0 : -1;
}

static int digest__fail(char *err, size_t errlen, const char *what, const char *path)
{
    snprintf(err, errlen, "%s \"%s\"%s%s", what, path, errno != 0 ? ": " : "",
             errno != 0 ? strerror(errno) : "");
    return -1;
}

/* SHA-256 of the public key's DER, hex. */
static int digest__key_id(EVP_PKEY *key, char out[65])
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(key, &der);
    if (n <= 0) {
        return -1;
    }
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(der, (size_t)n, md);
    OPENSSL_free(der);
    digest__hex(md, sizeof(md), out);
    return 0;
}

int nt_digest_keygen(const char *dir, char *err, size_t errlen)
{
    char kpath[4096], ppath[4096];
    snprintf(kpath, sizeof(kpath), "%s/%s", dir, NT_DIGEST_KEY_FILE);
    snprintf(ppath, sizeof(ppath), "%s/%s", dir, NT_DIGEST_PUB_FILE);
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (ctx == NULL || EVP_PKEY_keygen_init(ctx) <= 0 || EVP_PKEY_keygen(ctx, &key) <= 0) {
        EVP_PKEY_CTX_free(ctx);
        snprintf(err, errlen, "could not make an Ed25519 key");
        return -1;
    }
    EVP_PKEY_CTX_free(ctx);
    errno = 0;
    int fd = open(kpath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL) {
        if (fd >= 0) {
            close(fd);
        }
        EVP_PKEY_free(key);
        return digest__fail(err, errlen, "could not create the private key", kpath);
    }
    int ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
    ok = fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    errno = 0;
    FILE *p = ok ? fopen(ppath, "w") : NULL;
    int pok = p != NULL && PEM_write_PUBKEY(p, key) == 1;
    pok = p != NULL && fclose(p) == 0 && pok;
    EVP_PKEY_free(key);
    if (!ok || !pok) {
        return digest__fail(err, errlen, "could not write the key pair", !ok ? kpath : ppath);
    }
    return 0;
}

char *nt_digest_text(const char *database, const char *time, const nt_digest_head_t *heads,
                     size_t n)
{
    size_t cap = 256 + strlen(database) + n * 256;
    char *s = malloc(cap);
    if (s == NULL) {
        return NULL;
    }
    size_t len = (size_t)snprintf(s, cap, DIGEST__MAGIC "\ndatabase=%s\ntime=%s\n", database, time);
    for (size_t i = 0; i < n && len < cap; i++) {
        len += (size_t)snprintf(s + len, cap - len, "head=%s %" PRId64 " %s %s\n",
                                heads[i].collector_id, heads[i].seq, heads[i].entry_hash,
                                heads[i].committed_at);
    }
    return s;
}

/* The private key of key_file, or NULL with err. */
static EVP_PKEY *digest__load(const char *file, int private, char *err, size_t errlen)
{
    errno = 0;
    FILE *f = fopen(file, "r");
    if (f == NULL) {
        digest__fail(err, errlen, "could not open the key", file);
        return NULL;
    }
    EVP_PKEY *key =
        private ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    if (key == NULL || EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(key);
        snprintf(err, errlen, "\"%s\" holds no Ed25519 %s key in PEM", file,
                 private ? "private" : "public");
        return NULL;
    }
    return key;
}

/* Appends s as a JSON string (quotes and escapes) to out (room for 6 bytes per byte of s). */
static size_t digest__json_str(char *out, const char *s)
{
    size_t n = 0;
    out[n++] = '"';
    for (; *s != '\0'; s++) {
        if (*s == '\n') {
            n += (size_t)sprintf(out + n, "\\n");
        } else if (*s == '"' || *s == '\\') {
            n += (size_t)sprintf(out + n, "\\%c", *s);
        } else if ((unsigned char)*s < 0x20) {
            n += (size_t)sprintf(out + n, "\\u%04x", (unsigned char)*s);
        } else {
            out[n++] = *s;
        }
    }
    out[n++] = '"';
    out[n] = '\0';
    return n;
}

char *nt_digest_sign(const char *key_file, const char *text, char *err, size_t errlen)
{
    EVP_PKEY *key = digest__load(key_file, 1, err, errlen);
    if (key == NULL) {
        return NULL;
    }
    unsigned char sig[64];
    size_t siglen = sizeof(sig);
    char kid[65];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md != NULL && EVP_DigestSignInit(md, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestSign(md, sig, &siglen, (const unsigned char *)text, strlen(text)) == 1 &&
             digest__key_id(key, kid) == 0;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    if (!ok) {
        snprintf(err, errlen, "could not sign the digest with \"%s\"", key_file);
        return NULL;
    }
    char hex[129];
    digest__hex(sig, siglen, hex);
    size_t cap = 64 + 6 * strlen(text) + 256;
    char *json = malloc(cap);
    if (json == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    size_t n = (size_t)sprintf(json, "{\"version\": 1, \"signed\": ");
    n += digest__json_str(json + n, text);
    snprintf(json + n, cap - n, ", \"signature\": \"%s\", \"key\": \"%s\"}\n", hex, kid);
    return json;
}

int nt_digest_write(const char *dir, const char *time, const char *json, char *path, size_t pathlen,
                    char *err, size_t errlen)
{
    char final[4096], tmp[4200], name[64];
    snprintf(name, sizeof(name), "digest-%s.json", time);
    for (char *c = name; *c != '\0'; c++) {
        *c = *c == ':' ? '-' : *c; /* a portable file name */
    }
    snprintf(final, sizeof(final), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", final);
    errno = 0;
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        return digest__fail(err, errlen, "could not write the digest", tmp);
    }
    int ok = fputs(json, f) >= 0;
    ok = fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, final) != 0) {
        unlink(tmp);
        return digest__fail(err, errlen, "could not write the digest", final);
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    if (path != NULL) {
        snprintf(path, pathlen, "%s", final);
    }
    return 0;
}

/* The JSON string value of "key" in doc, unescaped into a malloc'd string; NULL if absent. */
static char *digest__field(const char *doc, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof(pat), "\"%s\": \"", key);
    const char *p = strstr(doc, pat);
    if (p == NULL) {
        return NULL;
    }
    p += strlen(pat);
    char *out = malloc(strlen(p) + 1);
    size_t n = 0;
    for (; out != NULL && *p != '\0' && *p != '"'; p++) {
        if (*p == '\\' && p[1] == 'u' && strlen(p) >= 6) {
            unsigned v = 0; /* the writer escapes only control characters this way */
            if (sscanf(p + 2, "%4x", &v) != 1 || v >= 0x80) {
                free(out);
                return NULL;
            }
            out[n++] = (char)v;
            p += 5;
        } else if (*p == '\\' && p[1] != '\0') {
            p++;
            out[n++] = *p == 'n' ? '\n' : *p;
        } else {
            out[n++] = *p;
        }
    }
    if (out != NULL && *p != '"') {
        free(out);
        return NULL;
    }
    if (out != NULL) {
        out[n] = '\0';
    }
    return out;
}

/* Parses the head lines of a verified text. Returns the count, or -1. */
static int digest__parse(char *text, nt_digest_head_t *heads, size_t max, char *time,
                         size_t timelen)
{
    char *save = NULL;
    char *line = strtok_r(text, "\n", &save);
    if (line == NULL || strcmp(line, DIGEST__MAGIC) != 0) {
        return -1;
    }
    size_t n = 0;
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        if (strncmp(line, "time=", 5) == 0) {
            snprintf(time, timelen, "%s", line + 5);
        } else if (strncmp(line, "head=", 5) == 0) {
            if (n >= max) {
                return -1;
            }
            nt_digest_head_t *h = &heads[n];
            if (sscanf(line + 5, "%64s %" SCNd64 " %64s %39s", h->collector_id, &h->seq,
                       h->entry_hash, h->committed_at) != 4 ||
                (!nt_ident_id_valid_str(h->collector_id) &&
                 strcmp(h->collector_id, "(genesis)") != 0)) {
                return -1;
            }
            n++;
        }
    }
    return (int)n;
}

int nt_digest_read(const char *path, const char *pub_file, nt_digest_head_t *heads, size_t max,
                   char *time, size_t timelen, char *err, size_t errlen)
{
    errno = 0;
    /* Not a FIFO or a device that would block the verifier; not through a symbolic link. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
        close(fd);
        snprintf(err, errlen, "\"%s\" is not a regular file", path);
        return -1;
    }
    FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
    if (f == NULL) {
        if (fd >= 0) {
            close(fd);
        }
        return digest__fail(err, errlen, "could not read the digest", path);
    }
    size_t cap = (size_t)1 << 20; /* a digest of thousands of chains is far smaller */
    char *doc = malloc(cap);
    size_t len = doc != NULL ? fread(doc, 1, cap - 1, f) : 0;
    fclose(f);
    if (doc == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    doc[len] = '\0';
    char *text = digest__field(doc, "signed");
    char *sighex = digest__field(doc, "signature");
    free(doc);
    unsigned char sig[64];
    int rc = -1;
    errno = 0;
    if (text == NULL || sighex == NULL || strlen(sighex) != 128 ||
        digest__unhex(sighex, sig, sizeof(sig)) != 0) {
        snprintf(err, errlen, "\"%s\" is not a needletrace digest", path);
        goto done;
    }
    EVP_PKEY *key = digest__load(pub_file, 0, err, errlen);
    if (key == NULL) {
        goto done;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md != NULL && EVP_DigestVerifyInit(md, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestVerify(md, sig, sizeof(sig), (const unsigned char *)text, strlen(text)) == 1;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    if (!ok) {
        snprintf(err, errlen, "\"%s\": the signature does not verify with \"%s\"", path, pub_file);
        goto done;
    }
    rc = digest__parse(text, heads, max, time, timelen);
    if (rc < 0) {
        snprintf(err, errlen, "\"%s\": signed, but not a readable digest", path);
    }
done:
    free(text);
    free(sighex);
    return rc;
}
