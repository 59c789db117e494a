# bench: edp-bench-multi
# data: multi-timeline.csv multi-events.csv
# title: Multi-broker: per-broker confirmed rate through a kill and rejoin
# caption: When node 2 is killed its share moves to nodes 0 and 1 at once (its unconfirmed messages are resent there) and the total holds the offered rate; once the restarted node is up the producer puts it back into rotation and the load spreads over three again.
load plotdir.'/common.gpi'
tl = dir.'/multi-timeline.csv'
ev = dir.'/multi-events.csv'
stats tl using 5 nooutput
y_max = STATS_max * 1.45
set title "Multi-broker: confirmed messages per second on each node while node 2 is killed and restarted".note
set xlabel "time (s)"
set ylabel "confirmed messages (msg/s, per 250 ms)"
set yrange [0:y_max]
set key outside bottom center horizontal
set bmargin 6
plot ev using 1:(y_max) with impulses ls 5 title "event", \
     ev using 1:(y_max * (0.95 - 0.06 * $0)):2 with labels left offset 0.5,0 font ",10" notitle, \
     tl using 1:5 with lines lc rgb "#999999" lw 1.5 title "all nodes", \
     tl using 1:2 with lines ls 1 title "node 0", \
     tl using 1:3 with lines ls 3 title "node 1", \
     tl using 1:4 with lines ls 2 title "node 2"
