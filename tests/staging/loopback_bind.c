/*
 * LD_PRELOAD helper for the staging tests: XRootD 5.5 cannot be told which
 * address to listen on and binds the wildcard address.  The project's rule is
 * that test servers listen on loopback only, so this wraps bind(2) and turns a
 * wildcard IPv4 address into 127.0.0.1 and a wildcard IPv6 address into the
 * IPv4-mapped ::ffff:127.0.0.1 (the socket still accepts IPv4 clients).
 * Every other bind() is passed through unchanged.
 *
 * Built by tests/staging/conftest.py:  cc -shared -fPIC -o X.so loopback_bind.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
    int (*next)(int, const struct sockaddr *, socklen_t) =
        (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");

    if (sa != NULL && sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in v4;
        memcpy(&v4, sa, sizeof v4);
        if (v4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return next(fd, (const struct sockaddr *)&v4, sizeof v4);
        }
    } else if (sa != NULL && sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 v6;
        memcpy(&v6, sa, sizeof v6);
        if (IN6_IS_ADDR_UNSPECIFIED(&v6.sin6_addr)) {
            inet_pton(AF_INET6, "::ffff:127.0.0.1", &v6.sin6_addr);
            return next(fd, (const struct sockaddr *)&v6, sizeof v6);
        }
    }
    return next(fd, sa, len);
}
