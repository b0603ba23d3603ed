/*
 * addheader: a libmilter milter in C that adds one header at end of message, for the
 * end-of-message stall tests and bench (test/integration/eom-stall.test.ts, bench/stall.ts).
 * libmilter writes the modification (SMFIR_ADDHEADER) and the verdict (SMFIR_CONTINUE) with a
 * write() each, Nagle on: the case where the verdict waits for the client's ACK.
 *
 *   addheader -p SOCKET
 *
 *   -p SOCKET  libmilter socket: inet:PORT@127.0.0.1, inet6:PORT@::1, unix:/path
 *
 * Every stage is answered CONTINUE; at end of message "X-C-Milter: added" is added.
 * Prints "addheader: listening on SOCKET" once listening; SIGTERM stops it.
 * Build: cc -O2 -o addheader addheader.c -lmilter -lpthread (apt-get install libmilter-dev).
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <libmilter/mfapi.h>

static unsigned long messages = 0;

static sfsistat
ah_eom(SMFICTX *ctx)
{
	__atomic_add_fetch(&messages, 1, __ATOMIC_RELAXED);
	if (smfi_addheader(ctx, "X-C-Milter", "added") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	return SMFIS_CONTINUE;
}

int
main(int argc, char **argv)
{
	const char *sock = NULL;
	int c;
	struct smfiDesc desc;

	while ((c = getopt(argc, argv, "p:")) != -1) {
		if (c == 'p')
			sock = optarg;
		else {
			fprintf(stderr, "usage: %s -p SOCKET\n", argv[0]);
			return 2;
		}
	}
	if (sock == NULL) {
		fprintf(stderr, "usage: %s -p SOCKET\n", argv[0]);
		return 2;
	}
	memset(&desc, 0, sizeof desc);
	desc.xxfi_name = "addheader";
	desc.xxfi_version = SMFI_VERSION;
	desc.xxfi_flags = SMFIF_ADDHDRS;
	desc.xxfi_eom = ah_eom;
	if (smfi_setconn((char *)sock) == MI_FAILURE) {
		fprintf(stderr, "addheader: smfi_setconn %s failed\n", sock);
		return 1;
	}
	if (smfi_register(desc) == MI_FAILURE) {
		fprintf(stderr, "addheader: smfi_register failed\n");
		return 1;
	}
	if (smfi_opensocket(1) == MI_FAILURE) {
		fprintf(stderr, "addheader: cannot listen on %s\n", sock);
		return 1;
	}
	fprintf(stderr, "addheader: listening on %s\n", sock);
	c = smfi_main();
	fprintf(stderr, "addheader: %lu messages\n", messages);
	return c == MI_SUCCESS ? 0 : 1;
}
