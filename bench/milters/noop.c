/*
 * noop: a libmilter milter that does nothing, for the SMTP benchmark (bench/smtp/).
 * The same binary runs behind Haraka (this plugin) and behind Postfix.
 *
 *   noop -p SOCKET [-n] [-r BYTES | -R]
 *
 *   -p SOCKET  libmilter socket: inet:PORT@127.0.0.1, unix:/path
 *   (default)  every stage is sent and answered (CONTINUE); the body callback counts the bytes
 *   -n         no-reply mode: SMFIP_NR_* for every stage the MTA offers, and SMFIP_NO* for the
 *              stages a body reader does not need (connect, HELO, MAIL, RCPT, DATA, unknown):
 *              headers and body still arrive (and are counted), only end of message is answered
 *   -r BYTES   replace the body at end of message with BYTES bytes of text (SMFIF_CHGBODY)
 *   -R         replace the body with as many bytes of text as it had
 *
 * On SIGTERM/SIGINT libmilter stops; the totals (messages, body bytes) go to stderr.
 * Build: cc -O2 -o noop noop.c -lmilter -lpthread (Debian: apt-get install libmilter-dev).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libmilter/mfapi.h>

static int no_reply = 0;
static long replace_bytes = 0;
static int replace_same = 0;
static unsigned long total_messages = 0;
static unsigned long long total_body = 0;

#define ANSWER (no_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE)

/* Per connection: body bytes of the message in progress. */
struct priv {
	unsigned long long body;
};

static sfsistat
noop_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
    unsigned long f3, unsigned long *pf0, unsigned long *pf1, unsigned long *pf2,
    unsigned long *pf3)
{
	unsigned long want = 0;
	(void)ctx;
	(void)f2;
	(void)f3;
	if (replace_bytes > 0 || replace_same) {
		if ((f0 & SMFIF_CHGBODY) == 0)
			return SMFIS_REJECT;
		*pf0 = SMFIF_CHGBODY;
	} else {
		*pf0 = 0;
	}
	if (no_reply) {
		want = SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT |
		    SMFIP_NR_DATA | SMFIP_NR_UNKN | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY |
		    SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NODATA |
		    SMFIP_NOUNKNOWN;
	}
	*pf1 = want & f1;
	*pf2 = 0;
	*pf3 = 0;
	return SMFIS_CONTINUE;
}

static struct priv *
priv_of(SMFICTX *ctx)
{
	struct priv *p = smfi_getpriv(ctx);
	if (p == NULL) {
		p = calloc(1, sizeof *p);
		if (p != NULL)
			smfi_setpriv(ctx, p);
	}
	return p;
}

static sfsistat
noop_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
	(void)host;
	(void)addr;
	(void)priv_of(ctx);
	return ANSWER;
}

static sfsistat
noop_helo(SMFICTX *ctx, char *helo)
{
	(void)ctx;
	(void)helo;
	return ANSWER;
}

static sfsistat
noop_envfrom(SMFICTX *ctx, char **argv)
{
	struct priv *p = priv_of(ctx);
	(void)argv;
	if (p != NULL)
		p->body = 0;
	return ANSWER;
}

static sfsistat
noop_envrcpt(SMFICTX *ctx, char **argv)
{
	(void)ctx;
	(void)argv;
	return ANSWER;
}

static sfsistat
noop_data(SMFICTX *ctx)
{
	(void)ctx;
	return ANSWER;
}

static sfsistat
noop_header(SMFICTX *ctx, char *name, char *value)
{
	(void)ctx;
	(void)name;
	(void)value;
	return ANSWER;
}

static sfsistat
noop_eoh(SMFICTX *ctx)
{
	(void)ctx;
	return ANSWER;
}

static sfsistat
noop_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	struct priv *p = priv_of(ctx);
	(void)chunk;
	if (p != NULL)
		p->body += len;
	return ANSWER;
}

static sfsistat
noop_unknown(SMFICTX *ctx, const char *cmd)
{
	(void)ctx;
	(void)cmd;
	return ANSWER;
}

static sfsistat
noop_eom(SMFICTX *ctx)
{
	struct priv *p = priv_of(ctx);
	long left = replace_same ? (p != NULL ? (long)p->body : 0) : replace_bytes;
	if (p != NULL) {
		__atomic_add_fetch(&total_body, p->body, __ATOMIC_RELAXED);
		p->body = 0;
	}
	__atomic_add_fetch(&total_messages, 1, __ATOMIC_RELAXED);
	if (replace_bytes > 0 || replace_same) {
		static unsigned char block[65535];
		static int filled = 0;
		if (!filled) {
			for (int i = 0; i < (int)sizeof block; i++)
				block[i] = (i % 78 == 76) ? '\r' : (i % 78 == 77) ? '\n' : 'a' + i % 26;
			filled = 1;
		}
		while (left > 0) {
			int n = left > (long)sizeof block ? (int)sizeof block : (int)left;
			if (smfi_replacebody(ctx, block, n) != MI_SUCCESS)
				return SMFIS_TEMPFAIL;
			left -= n;
		}
	}
	return SMFIS_CONTINUE;
}

static sfsistat
noop_abort(SMFICTX *ctx)
{
	struct priv *p = smfi_getpriv(ctx);
	if (p != NULL)
		p->body = 0;
	return SMFIS_CONTINUE;
}

static sfsistat
noop_close(SMFICTX *ctx)
{
	struct priv *p = smfi_getpriv(ctx);
	free(p);
	smfi_setpriv(ctx, NULL);
	return SMFIS_CONTINUE;
}

int
main(int argc, char **argv)
{
	const char *sock = NULL;
	int c;
	struct smfiDesc desc;

	while ((c = getopt(argc, argv, "p:nr:R")) != -1) {
		switch (c) {
		case 'p':
			sock = optarg;
			break;
		case 'n':
			no_reply = 1;
			break;
		case 'r':
			replace_bytes = atol(optarg);
			break;
		case 'R':
			replace_same = 1;
			break;
		default:
			fprintf(stderr, "usage: %s -p SOCKET [-n] [-r BYTES | -R]\n", argv[0]);
			return 2;
		}
	}
	if (sock == NULL) {
		fprintf(stderr, "usage: %s -p SOCKET [-n] [-r BYTES | -R]\n", argv[0]);
		return 2;
	}

	memset(&desc, 0, sizeof desc);
	desc.xxfi_name = "noop";
	desc.xxfi_version = SMFI_VERSION;
	desc.xxfi_flags = replace_bytes > 0 || replace_same ? SMFIF_CHGBODY : 0;
	desc.xxfi_connect = noop_connect;
	desc.xxfi_helo = noop_helo;
	desc.xxfi_envfrom = noop_envfrom;
	desc.xxfi_envrcpt = noop_envrcpt;
	desc.xxfi_header = noop_header;
	desc.xxfi_eoh = noop_eoh;
	desc.xxfi_body = noop_body;
	desc.xxfi_eom = noop_eom;
	desc.xxfi_abort = noop_abort;
	desc.xxfi_close = noop_close;
	desc.xxfi_unknown = noop_unknown;
	desc.xxfi_data = noop_data;
	desc.xxfi_negotiate = noop_negotiate;

	if (smfi_setconn((char *)sock) == MI_FAILURE) {
		fprintf(stderr, "noop: smfi_setconn %s failed\n", sock);
		return 1;
	}
	smfi_setbacklog(128);
	if (smfi_register(desc) == MI_FAILURE) {
		fprintf(stderr, "noop: smfi_register failed\n");
		return 1;
	}
	/* remove a stale unix socket; then listen now, so that failures show before "ready" */
	if (smfi_opensocket(1) == MI_FAILURE) {
		fprintf(stderr, "noop: cannot listen on %s\n", sock);
		return 1;
	}
	fprintf(stderr, "noop: listening on %s%s\n", sock, no_reply ? " (no-reply)" : "");
	c = smfi_main();
	fprintf(stderr, "noop: %lu messages, %llu body bytes\n", total_messages, total_body);
	return c == MI_SUCCESS ? 0 : 1;
}
