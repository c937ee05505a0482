/* pgsink.c -- placeholder until the module lands. */
