import collections,sys
samples=open(sys.argv[1]).read().split('\n\n')
tid=sys.argv[2]
n=0; ops=collections.Counter(); top=collections.Counter()
OPS=('io_recv','io_send','io_write','io_read','io_fsync','io_timeout','io_async_cancel','io_poll_add','io_link_timeout','io_nop','io_close','io_accept','io_connect','io_poll_remove','io_timeout_remove')
for s in samples:
    lines=[l.strip() for l in s.strip().split('\n') if l.strip()]
    if len(lines)<2 or lines[0].split()[0]!=tid: continue
    n+=1
    names=[f.split(None,1)[1].rsplit(' (',1)[0] if len(f.split(None,1))>1 else f for f in lines[1:]]
    if 'kernel' not in lines[1]: continue
    # syscall entry
    sc=[x for x in names if x.startswith('__x64_sys_') or x.startswith('__do_sys_')]
    top[sc[-1] if sc else '?']+=1
    if any('io_uring_enter' in x for x in names):
        op=[x for x in names if x in OPS]
        other=[x for x in names if x.startswith(('io_','__io_'))]
        ops[op[-1] if op else ('(cq wait)' if any('io_cqring_wait' in x for x in names) else '(other: '+(other[0] if other else '?')+')')]+=1
print(sys.argv[1], n)
print('syscalls'); [print(f"  {100*v/n:5.1f}% {k}") for k,v in top.most_common(10)]
print('io_uring_enter by op'); [print(f"  {100*v/n:5.1f}% {k}") for k,v in ops.most_common(14)]
