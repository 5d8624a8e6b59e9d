# Power of the paired exact McNemar test for the powered organism study (PLAN.md): simulated, not measured.
import sys
import numpy as np
from scipy.stats import binomtest
rng=np.random.default_rng(0)
def power(N,p0,k,c_on,alpha,sims=2000):
    p1=p0/k
    f_off=1-(p1-(1-p0)*c_on)/p0
    if f_off<0 or f_off>1: return float('nan')
    hits=0
    for _ in range(sims):
        tox=rng.random(N)<p0
        R=(rng.random(N)<f_off)&tox
        C=(rng.random(N)<c_on)&~tox
        r,c=int(R.sum()),int(C.sum())
        if r+c and r>c and binomtest(r,r+c,0.5).pvalue<alpha: hits+=1
    return hits/sims
# usage: python mde.py [N [p0 ...]]  (default: 219 items at vanilla rates 0.2 and 0.26)
N_ITEMS=int(sys.argv[1]) if len(sys.argv)>1 else 219
RATES=tuple(float(a) for a in sys.argv[2:]) or (0.2,0.26)
for N in (N_ITEMS,):
  for p0 in RATES:
    for c_on in (0.05,0.10):
      for alpha in (0.05,0.01):
        row=[]
        for k in (1.25,1.5,1.75,2.0,3.0):
            row.append(f"{k}x:{power(N,p0,k,c_on,alpha,800):.2f}")
        print(N,p0,c_on,alpha," ".join(row))
