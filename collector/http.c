/* http.c -- placeholder until the module lands. */
