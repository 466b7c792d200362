/*
 * LD_PRELOAD shim for an A/B in bench/capacity.py (target "1node+rcvbuf"):
 * every UDP socket the process opens gets a 4 MiB receive buffer
 * (SO_RCVBUFFORCE as root, else SO_RCVBUF up to net.core.rmem_max).
 *
 * Why: on a busy 2-core machine AhoyConference's single thread sometimes does
 * not run for a few hundred ms, and the kernel's default receive buffer
 * (net.core.rmem_default, 212,992 bytes: about half a second of one 1 Mbit/s
 * publisher) overflows (bench/RESULTS.md section 15).  This measures what a
 * larger buffer would change, without touching the server's code.
 *
 * Build: gcc -shared -fPIC -O2 -o udp_rcvbuf.so udp_rcvbuf.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>

#ifndef SO_RCVBUFFORCE
#define SO_RCVBUFFORCE 33
#endif

int socket(int domain, int type, int protocol) {
	static int (*real_socket)(int, int, int);
	if(!real_socket)
		real_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
	int fd = real_socket(domain, type, protocol);
	if(fd >= 0 && (domain == AF_INET || domain == AF_INET6) && (type & 0xff) == SOCK_DGRAM) {
		int size = 4 << 20;
		if(setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) != 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	}
	return fd;
}
