/* alert.c -- lists of alerts on their way from a committed transaction to the broker. */
#include "needletrace/alert.h"

#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"

const char *const nt_alert_rules[NT_RULE__COUNT] = {
#define ALERT__RULE_NAME(name) #name,
    NT_RULE_MAP(ALERT__RULE_NAME)
#undef ALERT__RULE_NAME
};

void nt_alert_list_init(nt_alert_list_t *l)
{
    l->items = NULL;
    l->n = 0;
    l->cap = 0;
}

int nt_alert_list_push(nt_alert_list_t *l, int64_t alert_id, const char *clinic_id,
                       const char *rule, const char *payload)
{
    if (nt_grow(&l->items, &l->cap, l->n + 1, sizeof(*l->items), 64) != 0) {
        return NT_ENOMEM;
    }
    nt_alert_t *a = &l->items[l->n];
    a->alert_id = alert_id;
    a->clinic_id = strdup(clinic_id);
    a->rule = strdup(rule);
    a->payload = strdup(payload);
    if (a->clinic_id == NULL || a->rule == NULL || a->payload == NULL) {
        free((char *)a->clinic_id);
        free((char *)a->rule);
        free((char *)a->payload);
        return NT_ENOMEM;
    }
    l->n++;
    return 0;
}

void nt_alert_list_clear(nt_alert_list_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free((char *)l->items[i].clinic_id);
        free((char *)l->items[i].rule);
        free((char *)l->items[i].payload);
    }
    l->n = 0;
}

void nt_alert_list_close(nt_alert_list_t *l)
{
    nt_alert_list_clear(l);
    free(l->items);
    nt_alert_list_init(l);
}
