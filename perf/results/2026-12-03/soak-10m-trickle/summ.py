import json,statistics as st,sys
c=json.load(open('/tmp/soak4/soak-http-corepay-soak.json')); r=json.load(open('/tmp/soak4/soak-http-durable-responder-soak.json'))
rmax=r['trends']['max_ms']; bound=3*rmax
t=c['trends']['max_ms_per_10s']; n=len(t)
print('responder max', rmax, 'bound', bound, 'responder 10s-max median', st.median(r['trends']['max_ms_per_10s']))
print('corepay 10s buckets', n, 'median', st.median(t), 'per fifth', [round(st.median(t[i*n//5:(i+1)*n//5]),1) for i in range(5)])
w=c['windows']
over=[i for i,x in enumerate(t) if x>bound]
print('buckets above bound', len(over))
for b in over:
    ws=[x for x in w if int(x['start_s']//10)==b]
    worst=max(ws,key=lambda x:x['max_ms'])
    print('  bucket',b*10,'s max %.1f'%t[b],'steal max %.0f%%'%(100*max(x.get('steal') or 0 for x in ws)),'dispatch lag max %.1f'%max(x['dispatch_lag_max_ms'] for x in ws),'worst window',worst['index'],'backlog',worst['backlog'])
for k in ('p50','p90','p99','p999','max'):
    print(k, 'corepay %.2f'%(c['run']['latency'][k]/1000), 'responder %.2f'%(r['run']['latency'][k]/1000), 'cold %.2f'%(c['cold'][k]/1000) if k in c['cold'] else '')
print('dispatch lag p99 corepay %.2f responder %.2f'%(c['run']['dispatch_lag']['p99']/1000, r['run']['dispatch_lag']['p99']/1000))
tr=c['trends']; print('rate first/last', tr['first_rate'], tr['last_rate'], tr['last_to_first_rate'])
for k in ('rss_first','rss_at_mark','rss_end'): print(k, tr[k]['processed'], round(tr[k]['bytes']/2**20,1))
print('RSS diff', round((tr['rss_end']['bytes']-tr['rss_at_mark']['bytes'])/2**20,1))
print('answers', c['run']['ok'], c['run']['shed'], c['run']['errors'], c['run']['declined'], 'check', c['run'].get('check'))
for k,v in c['run']['per_op'].items(): print(k, {q:round(v['latency'][q]/1000,2) for q in ('p50','p99','max')}, v['latency']['count'])
print('cold reads from store', max(x.get('store_cold_reads_total') or 0 for x in w))
