/* run.c -- placeholder until the module lands. */
