/* main.c -- placeholder until the module lands. */
