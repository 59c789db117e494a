# bench: edp-bench-forward
# data: forwarding-window.csv
# title: Event forwarding: persistent publish rate against the confirm window
# caption: A blocking confirm per message (window 1) is the floor; pipelining the confirms climbs toward the fire-and-forget ceiling, and past a few hundred messages in flight a larger window buys little.
load plotdir.'/common.gpi'
f = dir.'/forwarding-window.csv'
set title "Event forwarding: persistent publish rate against the confirm window".note
set xlabel "confirm window (unconfirmed messages in flight, log scale)"
set ylabel "publish rate (msg/s)"
set logscale x 2
set xrange [0.7:6000]
set yrange [0:*]
set xtics ("1" 1, "8" 8, "64" 64, "512" 512, "1024" 1024, "4096" 4096)
set key bottom right
plot f using 1:3 with lines ls 5 title "fire-and-forget (no confirms, unsafe): the ceiling", \
     f using 1:2 with linespoints ls 1 title "persistent, pipelined publisher confirms", \
     f using 1:2:(sprintf("%.0f", $2)) with labels offset 0,1 notitle
