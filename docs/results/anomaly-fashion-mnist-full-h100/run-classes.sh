# Usage: bash .gpu/oc.sh "<classes>" <lane> <extra flags...> (after sourcing .gpu/setup.sh):
# one process per class, reports under $OUT/<lane>/c<k>.
classes=$1; lane=$2; shift 2
mkdir -p $OUT/$lane
for k in $classes; do
  s=$(date +%s)
  /tmp/bin/xtask anomaly --device cuda --protocol one-class --dataset fashion-mnist-full --classes $k --quiet --out $OUT/$lane/c$k "$@" > $OUT/$lane/c$k.log 2>&1 || echo "class $k failed" >> $OUT/$lane/c$k.log
  echo "$lane class $k $(( $(date +%s) - s )) s: $(grep -m1 'Mean AUROC' $OUT/$lane/c$k/report.md 2>/dev/null) $(tail -2 $OUT/$lane/c$k.log | head -c 300)"
done
