/* batch.c -- placeholder until the module lands. */
