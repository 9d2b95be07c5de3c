/*
 * An HTTPS client whose OpenSSL is linked in statically (libssl.a, libcrypto.a): the process
 * maps no libssl.so, so tokentap must find SSL_read/SSL_write in this executable's own .symtab
 * (it exports nothing in .dynsym) and attach by file offset.
 * The same source is also built against Android's BoringSSL as shared libraries
 * (tests/src/tls_stacks.rs, boringssl_tls_client): it compiles unchanged.
 *
 * Usage: static_tls_client CA_FILE PORT SNI OUT_DIR REQUEST_FILE...
 * Each request file holds one complete HTTP/1.1 request (with "Connection: close"); it is sent
 * over a new TLS connection to 127.0.0.1:PORT with SNI, and the whole response, read until the
 * server closes, is written to OUT_DIR/<index>.response. With HOLD=1, the requests start after
 * one line is read from stdin, and afterwards one more connection is opened and kept until
 * stdin closes (so the process is seen with a connection).
 * Prints "pid <pid> <OpenSSL version>" first, "done" when the requests are answered.
 */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static SSL *connect_tls(SSL_CTX *ctx, int port, const char *sni) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        exit(2);
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, sni);
    SSL_set1_host(ssl, sni);
    if (SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        exit(2);
    }
    return ssl;
}

static char *read_file(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)*len + 1);
    if (fread(buf, 1, (size_t)*len, f) != (size_t)*len) {
        perror("read");
        exit(2);
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s CA_FILE PORT SNI OUT_DIR REQUEST_FILE...\n", argv[0]);
        return 2;
    }
    printf("pid %d %s\n", (int)getpid(), OpenSSL_version(OPENSSL_VERSION));
    fflush(stdout);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x08http/1.1", 9);
    if (SSL_CTX_load_verify_locations(ctx, argv[1], NULL) != 1) {
        ERR_print_errors_fp(stderr);
        return 2;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int port = atoi(argv[2]);
    const char *hold = getenv("HOLD");
    int holding = hold && strcmp(hold, "1") == 0;
    if (holding) {
        /* Wait for a line: the test starts sending once tokentap has hooked this process. */
        char line[16];
        if (!fgets(line, sizeof line, stdin))
            return 0;
    }
    for (int i = 5; i < argc; i++) {
        long len;
        char *req = read_file(argv[i], &len);
        SSL *ssl = connect_tls(ctx, port, argv[3]);
        /* Head and body in separate writes, as HTTP clients commonly do. */
        char *body = strstr(req, "\r\n\r\n");
        long head_len = body ? (body - req) + 4 : len;
        if (SSL_write(ssl, req, (int)head_len) != head_len ||
            (len > head_len && SSL_write(ssl, req + head_len, (int)(len - head_len)) != len - head_len)) {
            ERR_print_errors_fp(stderr);
            return 2;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%d.response", argv[4], i - 5);
        FILE *out = fopen(path, "wb");
        char buf[4096];
        int n;
        while ((n = SSL_read(ssl, buf, sizeof buf)) > 0)
            fwrite(buf, 1, (size_t)n, out);
        fclose(out);
        SSL_shutdown(ssl);
        close(SSL_get_fd(ssl));
        SSL_free(ssl);
        free(req);
    }
    printf("done\n");
    fflush(stdout);
    if (holding) {
        SSL *ssl = connect_tls(ctx, port, argv[3]);
        char c;
        while (read(0, &c, 1) > 0) {
        }
        SSL_free(ssl);
    }
    SSL_CTX_free(ctx);
    return 0;
}
