/* decoder.c -- placeholder until the module lands. */
