import collections,sys
samples=open(sys.argv[1]).read().split('\n\n')
tid=sys.argv[2] if len(sys.argv)>2 else None
n=0; ph=collections.Counter(); kn=collections.Counter()
rules=[('send','yolo_send'),('recv','yolo_recv'),('peek','yolo_peek'),('uring submit','SubmissionQueue::submit'),('sleep','SleepableRing::sleep'),
('membarrier','membarrier'),('blocking/futex','flume'),('blocking/futex','futex'),
('wal','corepay::wal::'),('idem','idem'),('json de','serde_json::de'),('json de','Deserialize'),('json ser','serde_json::ser'),('json ser','http::json'),('http wire','http::wire'),
('secrets/hash','secrets::'),('secrets/hash','sha2::'),('ledger','corepay::ledger::'),('metrics','corepay::metrics'),('admission','admission'),
('routing','shard::routing'),('routing','shard::mesh'),('store','corepay::store'),('alloc','mi_'),('alloc','alloc::alloc'),('gateway','corepay::gateway::'),('http api','http::api'),('net conn','shard::net'),('glommio','glommio::'),]
for s in samples:
    lines=[l.strip() for l in s.strip().split('\n') if l.strip()]
    if len(lines)<2: continue
    if tid and lines[0].split()[0]!=tid: continue
    n+=1
    frames=lines[1:]
    kernel='kernel' in frames[0]
    names=[f.split(None,1)[1] if len(f.split(None,1))>1 else f for f in frames]
    # leaf-most match
    cat='other'
    for nm in names:
        hit=None
        for c,pat in rules:
            if pat in nm: hit=c; break
        if hit: cat=hit; break
    (kn if kernel else ph)[cat]+=1
print('samples',n)
print('USER'); [print(f"  {100*v/n:5.1f}% {k}") for k,v in ph.most_common()]
print('KERNEL'); [print(f"  {100*v/n:5.1f}% {k}") for k,v in kn.most_common()]
