/* ident.h -- what a valid identifier, text, GTIN and calendar date are: the one place every
 * module (decoder, configuration, commands, simulator) asks.
 *
 * Plain functions over bytes: no allocation, no locale (a byte is a letter only when it is an
 * ASCII letter, whatever LC_CTYPE says). */
#ifndef NEEDLETRACE_IDENT_H
#define NEEDLETRACE_IDENT_H

#include <stddef.h>
#include <stdint.h>

#define NT_IDENT_MAX_ID_LEN         64u /* clinic_id, device_serial, collector id */
#define NT_IDENT_MAX_SESSION_ID_LEN 64u
#define NT_IDENT_GTIN_LEN           14u /* GS1 AI (01) */
#define NT_IDENT_MAX_GS1_TEXT_LEN   20u /* GS1 AI (10) lot and (21) serial */

/* 1 when c is an ASCII letter or digit (never locale-dependent). */
int nt_ident_is_alnum(unsigned char c);

/* 1 when s[0..len) is an identifier of the wire contract: 1-64 characters of
 * [A-Za-z0-9._-] (clinic_id, device_serial; also the collector id). 0 otherwise, also for
 * s == NULL. */
int nt_ident_id_valid(const char *s, size_t len);

/* Same for a NUL-terminated string. */
int nt_ident_id_valid_str(const char *s);

/* 1 when s[0..len) is a session id: 1-64 characters of [A-Za-z0-9._:-]. */
int nt_ident_session_id_valid(const char *s, size_t len);

/* Offset of the first byte of s[0..len) that does not start a well-formed UTF-8 sequence
 * (Unicode table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF, no truncated
 * sequence), or len when all of it is well-formed. */
size_t nt_ident_utf8_invalid_at(const char *s, size_t len);

/* 1 when s[0..len) is well-formed UTF-8. s == NULL is valid only with len 0. */
int nt_ident_utf8_valid(const char *s, size_t len);

/* Decodes the well-formed UTF-8 sequence at s[0..len) into *cp and returns its length (1-4),
 * or returns 0 when s does not start one (nothing is read past len). */
size_t nt_ident_utf8_decode(const char *s, size_t len, uint32_t *cp);

/* The GS1 mod-10 check digit ('0'-'9') of the 13 digits at base13. */
char nt_ident_gtin_check_digit(const char *base13);

/* 1 when s[0..len) is a GTIN-14: 14 digits, the last the GS1 check digit of the others. */
int nt_ident_gtin_valid(const char *s, size_t len);

/* 1 when s[0..len) is a GS1 lot or serial: 1-20 printable ASCII characters 0x21-0x7e (a
 * superset of the GS1 AI encodable character set 82). */
int nt_ident_gs1_text_valid(const char *s, size_t len);

/* 1 when y is a leap year of the proleptic Gregorian calendar. */
int nt_ident_is_leap(int64_t y);

/* Days in month m (1-12) of year y. */
unsigned nt_ident_days_in_month(int64_t y, unsigned m);

/* 1 when yyyymmdd is a GS1 date (AI 17) in 2000-2099: a real month and day, or day 00 (the
 * last day of the month, as GS1 allows for expiry dates). */
int nt_ident_gs1_date_valid(uint32_t yyyymmdd);

#endif
