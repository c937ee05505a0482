/* reason.c -- the stable names of the quarantine reasons (see reason.h). */
#include "needletrace/reason.h"

#include "needletrace/common.h"

static const char *const reason__names[] = {
#define REASON__NAME(name, text) text,
    NT_REASON_MAP(REASON__NAME)
#undef REASON__NAME
};

const char *nt_reason_name(nt_reason_t r)
{
    if ((unsigned)r >= NT_ARRAY_SIZE(reason__names)) {
        return "unknown";
    }
    return reason__names[r];
}
