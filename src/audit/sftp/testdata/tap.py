#!/usr/bin/env python3
# Runs sftp-server, relays stdin/stdout, logs each chunk as: dir(1 byte 'C'/'S') len(4) bytes
import os, subprocess, sys, threading, struct
log = open(os.environ["TAP_LOG"], "wb")
lock = threading.Lock()
p = subprocess.Popen(["/usr/lib/openssh/sftp-server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
def pump(src, dst, tag):
    while True:
        b = os.read(src, 65536)
        if not b:
            break
        with lock:
            log.write(tag + struct.pack(">I", len(b)) + b); log.flush()
        os.write(dst, b)
    try: os.close(dst)
    except OSError: pass
t1 = threading.Thread(target=pump, args=(0, p.stdin.fileno(), b"C")); t1.start()
pump(p.stdout.fileno(), 1, b"S")
t1.join(timeout=1)
